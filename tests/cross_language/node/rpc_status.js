'use strict';
// Decodes the `grpc-status-details-bin` trailer: a google.rpc.Status whose details hold a
// google.rpc.ErrorInfo (AIP-193). Decoded by hand from the wire format, so the client needs no
// googleapis protos: Status{1 code, 2 message, 3 details: Any{1 type_url, 2 value}},
// ErrorInfo{1 reason, 2 domain, 3 metadata: map entry{1 key, 2 value}}.

const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

function readVarint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const byte = buf[pos++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, pos];
    scale *= 128;
  }
}

/** [field number, varint value or bytes] for each field of one encoded message. */
function* fields(buf) {
  let pos = 0;
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const number = Math.floor(key / 8);
    const wireType = key % 8;
    if (wireType === 0) {
      let value;
      [value, pos] = readVarint(buf, pos);
      yield [number, value];
    } else if (wireType === 2) {
      let length;
      [length, pos] = readVarint(buf, pos);
      if (pos + length > buf.length) throw new Error('truncated length-delimited field');
      yield [number, buf.subarray(pos, pos + length)];
      pos += length;
    } else if (wireType === 1) {
      pos += 8;
    } else if (wireType === 5) {
      pos += 4;
    } else {
      throw new Error(`unsupported wire type ${wireType}`);
    }
  }
}

function decodeErrorInfo(buf) {
  const info = { reason: '', domain: '', metadata: {} };
  for (const [number, value] of fields(buf)) {
    if (number === 1) info.reason = value.toString('utf8');
    else if (number === 2) info.domain = value.toString('utf8');
    else if (number === 3) {
      let key = '';
      let entry = '';
      for (const [n, v] of fields(value)) {
        if (n === 1) key = v.toString('utf8');
        else if (n === 2) entry = v.toString('utf8');
      }
      info.metadata[key] = entry;
    }
  }
  return info;
}

/** The google.rpc.Status encoded in `buf`, with its first ErrorInfo detail (or null). */
function decodeStatus(buf) {
  const status = { code: 0, message: '', errorInfo: null };
  for (const [number, value] of fields(buf)) {
    if (number === 1) status.code = value;
    else if (number === 2) status.message = value.toString('utf8');
    else if (number === 3 && status.errorInfo === null) {
      let typeUrl = '';
      let packed = Buffer.alloc(0);
      for (const [n, v] of fields(value)) {
        if (n === 1) typeUrl = v.toString('utf8');
        else if (n === 2) packed = v;
      }
      if (typeUrl === ERROR_INFO_TYPE) status.errorInfo = decodeErrorInfo(packed);
    }
  }
  return status;
}

/** The rich status of a grpc-js ServiceError, or null when it carries none. */
function richStatus(err) {
  const [details] = err.metadata?.get('grpc-status-details-bin') ?? [];
  return details ? decodeStatus(Buffer.from(details)) : null;
}

module.exports = { decodeStatus, richStatus };
