export { decodeWav, floatToPcm16, toBase64 } from "./audio.js";
export type { DecodedWav } from "./audio.js";
export { StreamingClient, transcribe } from "./client.js";
export type {
  ClientOptions,
  StreamMessage,
  StreamOptions,
  Transcript,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { parseMessage, ProtocolViolationError, ServerError, StreamClosedError } from "./messages.js";
export type { Eou, ErrorMessage, Hello, Pong, Result, ServerMessage, Word } from "./messages.js";
