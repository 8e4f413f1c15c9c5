'use strict';
// A complete octollm.v1 ArmService in Node.js: the "shouter" arm upper-cases text.
//
//   node arm.js <port> [host]        (port 0 picks a free one; host defaults to 127.0.0.1)
//
// Prints `listening <port>` on stdout when ready and `cancelled <subtask_id>` for every Cancel
// that stopped work; logs go to stderr. SIGTERM/SIGINT drain: health turns NOT_SERVING, new
// dispatches are refused with ARM_DRAINING (the orchestrator requeues them), running work gets
// DRAIN_GRACE_MS to finish, then the server stops and the process exits 0.
//
// Input: {"text": string, "delay_ms": number, "fail": true}; output: {"text": TEXT UPPER-CASED}
// (the description when input.text is missing).

const crypto = require('node:crypto');
const contracts = require('./contracts');

const { grpc, octollm, health, fromStruct, toStruct, durationMs, toDuration } = contracts;

const ARM_SERVICE = 'octollm.v1.ArmService';
const MAX_CONCURRENCY = 8;
const DRAIN_GRACE_MS = 5_000;
const MAX_DELAY_MS = 3_600_000;
const Code = { CANCELLED: 1, INVALID_ARGUMENT: 3, DEADLINE_EXCEEDED: 4, UNAVAILABLE: 14 };

const DESCRIPTOR = {
  arm_id: `node-shouter-${crypto.randomBytes(4).toString('hex')}`,
  arm_type: 'shouter',
  capabilities: ['shout', 'uppercase', 'nodejs'],
  input_schema: toStruct({
    type: 'object',
    properties: {
      text: { type: 'string' },
      delay_ms: { type: 'number', minimum: 0 },
      fail: { type: 'boolean' },
    },
  }),
  output_schema: toStruct({ type: 'object', properties: { text: { type: 'string' } } }),
  cost_tier: 'COST_TIER_LOW',
  max_concurrency: MAX_CONCURRENCY,
  version: '0.1.0',
  description: 'Upper-cases input.text (or the description); written in Node.js',
};

// Server options mirror arm_sdk/grpc_options.py: keepalive both ways, 16 MiB messages.
const SERVER_OPTIONS = {
  'grpc.keepalive_time_ms': 20_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.max_receive_message_length': 16 * 1024 * 1024,
  'grpc.max_send_message_length': 16 * 1024 * 1024,
};

function log(event, fields = {}) {
  process.stderr.write(`${JSON.stringify({ event, arm_id: DESCRIPTOR.arm_id, ...fields })}\n`);
}

/** grpc.health.v1.Health, by hand: Check and Watch over a status per service name. */
class HealthService {
  constructor(services) {
    this.statuses = new Map(services.map((service) => [service, 'SERVING']));
    this.watches = new Set();
  }

  handlers() {
    return {
      Check: (call, callback) => {
        const { service } = call.request;
        const status = this.statuses.get(service);
        if (status === undefined) {
          callback({ code: grpc.status.NOT_FOUND, details: `unknown service ${service}` });
        } else {
          callback(null, { status });
        }
      },
      Watch: (call) => {
        this.watches.add(call);
        const forget = () => this.watches.delete(call);
        call.on('cancelled', forget);
        call.on('error', forget);
        call.on('finish', forget);
        call.write({ status: this.statuses.get(call.request.service) ?? 'SERVICE_UNKNOWN' });
      },
    };
  }

  setAll(status) {
    for (const service of this.statuses.keys()) this.statuses.set(service, status);
    for (const call of this.watches) {
      if (this.statuses.has(call.request.service)) call.write({ status });
    }
  }

  endWatches() {
    for (const call of this.watches) call.end();
    this.watches.clear();
  }
}

function shout(dispatch) {
  const input = fromStruct(dispatch.input);
  const text = typeof input.text === 'string' ? input.text : dispatch.description;
  return { input, output: { text: text.toUpperCase() } };
}

function failureOf(code, reason, message, retryable) {
  return { code, reason, message, retryable, metadata: {} };
}

/** One Execute stream: Hello, credits, and the subtasks multiplexed on it. */
class ExecuteSession {
  constructor(call, arm) {
    this.call = call;
    this.arm = arm;
    this.open = true;
    this.peerDone = false;
    this.running = new Map(); // subtask_id -> {attempt, timer, started}
  }

  start() {
    this.send({ hello: { descriptor: DESCRIPTOR } });
    this.send({ credit: { n: MAX_CONCURRENCY } });
    this.call.on('data', (request) => this.onRequest(request));
    this.call.on('end', () => {
      // The orchestrator sends nothing more; answers for running work may still go out.
      this.peerDone = true;
      this.endIfDone();
    });
    this.call.on('cancelled', () => this.close('cancelled'));
    this.call.on('error', (err) => this.close(`error: ${err.message}`));
  }

  send(response) {
    if (this.open) this.call.write(response);
  }

  onRequest(request) {
    switch (request.kind) {
      case 'dispatch':
        this.onDispatch(request.dispatch);
        break;
      case 'cancel':
        this.onCancel(request.cancel);
        break;
      case 'ping':
        this.send({ pong: { nonce: request.ping.nonce } });
        break;
      default:
        log('execute_empty_request');
    }
  }

  onDispatch(dispatch) {
    const { subtask_id: subtaskId, attempt } = dispatch;
    if (this.arm.draining) {
      const failure = failureOf(Code.UNAVAILABLE, 'ARM_DRAINING', 'arm is draining', true);
      this.fail(dispatch, failure, false);
      return;
    }
    const previous = this.running.get(subtaskId);
    if (previous !== undefined) {
      // A re-dispatch supersedes the old attempt; the old one's credit comes back with it.
      clearTimeout(previous.timer);
      this.running.delete(subtaskId);
      this.send({ credit: { n: 1 } });
    }
    if (this.running.size >= MAX_CONCURRENCY) {
      const message = 'dispatch without credit';
      const failure = failureOf(Code.UNAVAILABLE, 'CREDIT_EXCEEDED', message, true);
      this.fail(dispatch, failure, false);
      return;
    }
    const started = Date.now();
    this.send({ accepted: { subtask_id: subtaskId, attempt } });
    this.send({ progress: { subtask_id: subtaskId, fraction: 0, message: 'shouting' } });
    const { input, output } = shout(dispatch);
    const delayMs = Math.min(Math.max(Number(input.delay_ms) || 0, 0), MAX_DELAY_MS);
    const timeoutMs = durationMs(dispatch.timeout);
    const timedOut = timeoutMs > 0 && delayMs >= timeoutMs;
    const finish = () => {
      this.running.delete(subtaskId);
      if (timedOut) {
        const message = `delay_ms ${delayMs} exceeds the subtask timeout of ${timeoutMs} ms`;
        this.fail(dispatch, failureOf(Code.DEADLINE_EXCEEDED, 'DEADLINE_EXCEEDED', message, false));
      } else if (input.fail === true) {
        const message = 'input.fail is true: failing on request';
        this.fail(dispatch, failureOf(Code.INVALID_ARGUMENT, 'BAD_INPUT', message, false));
      } else {
        this.send({
          result: {
            subtask_id: subtaskId,
            attempt,
            output: toStruct(output),
            confidence: 1,
            provenance: {
              arm_id: DESCRIPTOR.arm_id,
              attempt,
              duration: toDuration(Date.now() - started),
            },
          },
        });
        this.send({ credit: { n: 1 } });
      }
      this.endIfDone();
      this.arm.onIdle();
    };
    const timer = setTimeout(finish, timedOut ? timeoutMs : delayMs);
    this.running.set(subtaskId, { attempt, timer, started });
  }

  onCancel({ subtask_id: subtaskId, reason }) {
    const work = this.running.get(subtaskId);
    if (work === undefined) return; // finished already, or never here: nothing to stop
    clearTimeout(work.timer);
    this.running.delete(subtaskId);
    process.stdout.write(`cancelled ${subtaskId}\n`);
    const failure = failureOf(Code.CANCELLED, 'CANCELLED', `cancelled: ${reason}`, false);
    this.fail({ subtask_id: subtaskId, attempt: work.attempt }, failure, true, work.started);
    this.endIfDone();
    this.arm.onIdle();
  }

  fail(dispatch, failure, grantCredit = true, started = Date.now()) {
    this.send({
      failure: {
        subtask_id: dispatch.subtask_id,
        attempt: dispatch.attempt,
        failure,
        duration: toDuration(Date.now() - started),
      },
    });
    if (grantCredit) this.send({ credit: { n: 1 } });
  }

  /** Hand every running subtask back as retryable so the orchestrator requeues it. */
  abandonRunning() {
    for (const [subtaskId, work] of this.running) {
      clearTimeout(work.timer);
      const failure = failureOf(Code.UNAVAILABLE, 'ARM_DRAINING', 'arm stopped', true);
      this.fail({ subtask_id: subtaskId, attempt: work.attempt }, failure, false, work.started);
    }
    this.running.clear();
  }

  endIfDone() {
    if (this.peerDone && this.running.size === 0) this.end('peer_half_closed');
  }

  end(why = 'arm_stopping') {
    if (this.open) this.call.end();
    this.close(why);
  }

  close(why) {
    if (!this.open) return;
    this.open = false;
    for (const work of this.running.values()) clearTimeout(work.timer);
    this.running.clear();
    this.arm.sessions.delete(this);
    log('execute_stream_closed', { why });
    this.arm.onIdle();
  }
}

class ShouterArm {
  constructor() {
    this.server = new grpc.Server(SERVER_OPTIONS);
    this.health = new HealthService(['', ARM_SERVICE]);
    this.sessions = new Set();
    this.draining = false;
    this.drained = null;
    this.idleWaiters = [];
    this.server.addService(octollm.ArmService.service, {
      DescribeArm: (_call, callback) => callback(null, { descriptor: DESCRIPTOR }),
      Execute: (call) => {
        const session = new ExecuteSession(call, this);
        this.sessions.add(session);
        log('execute_stream_open');
        session.start();
      },
    });
    this.server.addService(health.Health.service, this.health.handlers());
  }

  listen(host, port) {
    return new Promise((resolve, reject) => {
      const credentials = grpc.ServerCredentials.createInsecure();
      this.server.bindAsync(`${host}:${port}`, credentials, (err, bound) =>
        err ? reject(err) : resolve(bound),
      );
    });
  }

  busy() {
    for (const session of this.sessions) if (session.running.size > 0) return true;
    return false;
  }

  onIdle() {
    if (this.busy()) return;
    for (const wake of this.idleWaiters.splice(0)) wake();
  }

  /** Drain and stop the server; later calls wait for the first one. */
  drain(signal) {
    this.drained ??= this.drainNow(signal);
    return this.drained;
  }

  async drainNow(signal) {
    this.draining = true;
    log('arm_draining', { signal, grace_ms: DRAIN_GRACE_MS });
    this.health.setAll('NOT_SERVING');
    if (this.busy()) {
      let timer;
      await new Promise((resolve) => {
        this.idleWaiters.push(resolve);
        timer = setTimeout(resolve, DRAIN_GRACE_MS);
      });
      clearTimeout(timer);
    }
    for (const session of [...this.sessions]) {
      session.abandonRunning();
      session.end();
    }
    this.health.endWatches();
    await new Promise((resolve) => {
      const force = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2_000);
      this.server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
    log('arm_stopped');
  }
}

async function main(argv) {
  const port = Number(argv[0] ?? 0);
  const host = argv[1] ?? '127.0.0.1';
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`usage: node arm.js <port> [host]; bad port ${JSON.stringify(argv[0])}`);
  }
  const arm = new ShouterArm();
  const bound = await arm.listen(host, port);
  // NOTE: `on`, not `once`: a repeated signal must not kill the process mid-drain (drain is
  // idempotent and bounded by DRAIN_GRACE_MS plus the shutdown timeout).
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      arm.drain(signal).then(
        () => process.exit(0),
        (err) => {
          log('arm_drain_failed', { error: String(err) });
          process.exit(1);
        },
      );
    });
  }
  log('arm_listening', { host, port: bound });
  process.stdout.write(`listening ${bound}\n`);
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`arm.js failed: ${err.stack ?? err}\n`);
  process.exit(1);
});
