'use strict';
// Loads the octollm.v1 contracts (straight from the repo's protos/) and the vendored
// grpc.health.v1 proto, and converts between plain JSON and google.protobuf.Struct.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO_PROTOS = path.resolve(__dirname, '../../../protos');
const VENDORED_PROTOS = path.resolve(__dirname, 'protos');

// NOTE: proto-loader ships google/protobuf/*.proto itself, so only our roots are include dirs.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [REPO_PROTOS, VENDORED_PROTOS],
};

function load(files) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(files, LOADER_OPTIONS));
}

const loaded = load([
  'octollm/v1/orchestrator_service.proto',
  'octollm/v1/arm_service.proto',
  'grpc/health/v1/health.proto',
]);

const octollm = loaded.octollm.v1;
const health = loaded.grpc.health.v1;

// NOTE: protobufjs supplies the well-known types itself, with camelCase field names, so
// google.protobuf.Value fields are camelCase even with keepCase (which covers our own protos).
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === 'object') return { structValue: toStruct(value) };
  throw new TypeError(`a ${typeof value} cannot be a google.protobuf.Value`);
}

/** A plain JSON object as a google.protobuf.Struct (proto-loader object form). */
function toStruct(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object ?? {})) fields[key] = toValue(value);
  return { fields };
}

function fromValue(value) {
  switch (value?.kind) {
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'structValue':
      return fromStruct(value.structValue);
    case 'listValue':
      return (value.listValue.values ?? []).map(fromValue);
    default:
      return null;
  }
}

/** A google.protobuf.Struct (proto-loader object form) as a plain JSON object. */
function fromStruct(struct) {
  const object = {};
  for (const [key, value] of Object.entries(struct?.fields ?? {})) object[key] = fromValue(value);
  return object;
}

/** A google.protobuf.Duration (proto-loader object form) in milliseconds. */
function durationMs(duration) {
  return duration ? duration.seconds * 1e3 + duration.nanos / 1e6 : 0;
}

/** Milliseconds as a google.protobuf.Duration (proto-loader object form). */
function toDuration(ms) {
  const seconds = Math.floor(ms / 1e3);
  return { seconds, nanos: Math.min(Math.round((ms - seconds * 1e3) * 1e6), 999999999) };
}

module.exports = { grpc, octollm, health, toStruct, fromStruct, durationMs, toDuration };
