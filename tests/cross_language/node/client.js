'use strict';
// A Node.js OrchestratorService client: submits a task, follows it to the end, reads it back.
//
//   node client.js <host:port> <goal> [plan-json]
//
// plan-json is an octollm.v1.Plan in JSON with plain-JSON step inputs, e.g.
//   {"steps": [{"step_id": "a", "description": "...", "arm_type": "echo", "input": {"k": 1}}]}
// Prints ONE JSON line: {task_id, state, answer, failure_reason, events (how many WatchTask
// gave), seqs_ok (their seq ran 1..N with no gap), last_seq (GetTask's), arm_types (ListArms),
// and, from GetTask on a malformed id: bad_id_code (the gRPC status), bad_id_status_code,
// bad_id_reason, bad_id_domain, bad_id_field (decoded from the grpc-status-details-bin
// trailer)}. Exits non-zero on any error.

const { grpc, octollm, toStruct } = require('./contracts');
const { richStatus } = require('./rpc_status');

// Hang guards, not budgets: the caller asserts on the outcome, never on the time taken.
const UNARY_TIMEOUT_MS = 20_000;
const WATCH_TIMEOUT_MS = 60_000;
const MALFORMED_TASK_ID = 'not-a-task-id';

function deadline(ms) {
  return { deadline: Date.now() + ms };
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, deadline(UNARY_TIMEOUT_MS), (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

/** Every event of the task, in order, until (and including) the `finished` one. */
function watch(client, taskId) {
  return new Promise((resolve, reject) => {
    const events = [];
    let finished = false;
    const call = client.WatchTask({ task_id: taskId, after_seq: 0 }, deadline(WATCH_TIMEOUT_MS));
    call.on('data', ({ event }) => {
      events.push(event);
      if (event.kind === 'finished') {
        finished = true;
        call.cancel();
        resolve(events);
      }
    });
    call.on('error', (err) => {
      if (!finished) reject(err);
    });
    call.on('end', () => {
      if (!finished) reject(new Error(`WatchTask ended after ${events.length} events, no finish`));
    });
  });
}

function parsePlan(json) {
  const plan = JSON.parse(json);
  return {
    plan_id: plan.plan_id ?? '',
    steps: (plan.steps ?? []).map((step) => ({ ...step, input: toStruct(step.input ?? {}) })),
  };
}

async function malformedIdError(client) {
  try {
    await unary(client, 'GetTask', { task_id: MALFORMED_TASK_ID });
  } catch (err) {
    const status = richStatus(err);
    const info = status?.errorInfo;
    return {
      bad_id_code: err.code,
      bad_id_status_code: status?.code ?? null,
      bad_id_reason: info?.reason ?? null,
      bad_id_domain: info?.domain ?? null,
      bad_id_field: info?.metadata.field ?? null,
    };
  }
  throw new Error(`GetTask(${JSON.stringify(MALFORMED_TASK_ID)}) unexpectedly succeeded`);
}

async function main(argv) {
  const [address, goal, planJson] = argv;
  if (!address || !goal) throw new Error('usage: node client.js <host:port> <goal> [plan-json]');
  const client = new octollm.OrchestratorService(address, grpc.credentials.createInsecure());
  try {
    const request = { goal };
    if (planJson) request.plan = parsePlan(planJson);
    const { task: submitted } = await unary(client, 'SubmitTask', request);
    const events = await watch(client, submitted.task_id);
    const seqsOk = events.every((event, i) => event.seq === i + 1);
    const { task } = await unary(client, 'GetTask', { task_id: submitted.task_id });
    const { arms } = await unary(client, 'ListArms', {});
    const report = {
      task_id: task.task_id,
      state: task.state,
      answer: task.result?.answer ?? '',
      failure_reason: task.failure?.reason ?? '',
      events: events.length,
      seqs_ok: seqsOk,
      last_seq: task.last_seq,
      arm_types: [...new Set(arms.map((arm) => arm.descriptor?.arm_type ?? ''))]
        .filter(Boolean)
        .sort(),
      ...(await malformedIdError(client)),
    };
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`client.js failed: ${err.stack ?? err}\n`);
  process.exitCode = 1;
});
