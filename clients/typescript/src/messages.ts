// Server messages (docs/protocol.md). Parsing is lenient so that newer servers keep working:
// unknown fields are kept but ignored, unknown message types are skipped.

export interface Hello {
  type: "hello";
  stream_id: number;
  sample_rate: number;
  model?: string;
  encodings?: string[];
  protocol?: number; // absent on protocol-1 servers
  chunk_ms?: number;
}

/** Word timing, sent when the stream asked for timestamps (`?timestamps=true`). */
export interface Word {
  word: string;
  start_ms: number;
  end_ms: number;
  confidence?: number;
}

export interface Result {
  type: "result";
  stream_id: number;
  text: string; // the whole transcript so far
  token_ids: number[]; // only the tokens since the previous result
  confidence_scores: number[];
  is_final: boolean;
  audio_ms?: number;
  utterance?: number;
  flushed?: boolean; // the answer to a flush request
  token_start_ms?: number[]; // with ?timestamps=true
  words?: Word[]; // with ?timestamps=true
}

export interface Eou {
  type: "eou";
  stream_id: number;
  utterance: number;
  text: string; // this utterance only
  audio_ms?: number;
  backchannel?: boolean;
  reason?: string; // what ended the utterance
  words?: Word[]; // with ?timestamps=true
}

export interface ErrorMessage {
  type: "error";
  code: string; // stable, e.g. "server_full"; "error" from protocol-1 servers that send none
  message: string;
  fatal: boolean;
}

export interface Pong {
  type: "pong";
}

export type ServerMessage = Hello | Result | Eou | ErrorMessage | Pong;

/** A server `error`, or a stream that ended badly. `final` is the final result when one still came. */
export class ServerError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly fatal: boolean = true,
    readonly final?: Result,
  ) {
    super(`${code}: ${message}`);
    this.name = "ServerError";
  }
}

/** The connection closed before the final result. */
export class StreamClosedError extends Error {
  constructor(message = "the connection closed before the final result") {
    super(message);
    this.name = "StreamClosedError";
  }
}

/** The server sent something this client cannot read. */
export class ProtocolViolationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolViolationError";
  }
}

type Json = Record<string, unknown>;

/** One server message (JSON text) -> a typed message, or null for a type this client doesn't know. */
export function parseMessage(text: string): ServerMessage | null {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch {
    throw new ProtocolViolationError(`server sent a message that is not JSON: ${text.slice(0, 200)}`);
  }
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    throw new ProtocolViolationError(`server sent JSON that is not an object: ${text.slice(0, 200)}`);
  }
  const m = obj as Json;
  switch (m.type) {
    case "hello":
      need(m, "stream_id", "number");
      need(m, "sample_rate", "number");
      return m as unknown as Hello;
    case "result":
      need(m, "stream_id", "number");
      need(m, "text", "string");
      need(m, "is_final", "boolean");
      return { ...m, token_ids: arr(m.token_ids), confidence_scores: arr(m.confidence_scores) } as unknown as Result;
    case "eou":
      need(m, "utterance", "number");
      return { ...m, text: typeof m.text === "string" ? m.text : "" } as unknown as Eou;
    case "error":
      return {
        ...m,
        code: typeof m.code === "string" && m.code ? m.code : "error",
        message: String(m.message ?? ""),
        fatal: m.fatal === true,
      } as unknown as ErrorMessage;
    case "pong":
      return { type: "pong" };
    default:
      return null;
  }
}

function need(m: Json, key: string, kind: string): void {
  if (typeof m[key] !== kind) {
    throw new ProtocolViolationError(`malformed ${String(m.type)} message: '${key}' should be a ${kind}`);
  }
}

function arr(v: unknown): number[] {
  return Array.isArray(v) ? (v as number[]) : [];
}
