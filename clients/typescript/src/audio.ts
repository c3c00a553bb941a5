// Audio helpers that work in Node and in browsers (no fs, no Buffer).

/** Float samples in [-1, 1] -> little-endian signed 16-bit PCM bytes (clipped). */
export function floatToPcm16(samples: Float32Array): Uint8Array {
  const out = new Uint8Array(samples.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < samples.length; i++) {
    const v = Math.round(samples[i] * 32768);
    view.setInt16(i * 2, v > 32767 ? 32767 : v < -32768 ? -32768 : v, true);
  }
  return out;
}

/** Standard base64 (what JSON `audio` messages carry). */
export function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export interface DecodedWav {
  samples: Float32Array; // mono, channels averaged
  sampleRate: number;
}

/** A WAV file's bytes -> float mono samples. PCM 16-bit and IEEE float 32-bit. */
export function decodeWav(bytes: Uint8Array): DecodedWav {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (pos: number) => String.fromCharCode(...bytes.subarray(pos, pos + 4));
  if (bytes.length < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new Error("not a WAV file");
  let fmt: DataView | undefined;
  let data: Uint8Array | undefined;
  for (let pos = 12; pos + 8 <= bytes.length; ) {
    const size = view.getUint32(pos + 4, true);
    const end = Math.min(pos + 8 + size, bytes.length);
    if (tag(pos) === "fmt ") fmt = new DataView(bytes.buffer, bytes.byteOffset + pos + 8, end - pos - 8);
    else if (tag(pos) === "data") data = bytes.subarray(pos + 8, end);
    pos += 8 + size + (size % 2); // chunks are padded to an even size
  }
  if (!fmt || !data || fmt.byteLength < 16) throw new Error("WAV file without fmt or data chunk");
  let format = fmt.getUint16(0, true);
  if (format === 0xfffe && fmt.byteLength >= 26) format = fmt.getUint16(24, true); // WAVE_FORMAT_EXTENSIBLE
  const channels = fmt.getUint16(2, true);
  const sampleRate = fmt.getUint32(4, true);
  const bits = fmt.getUint16(14, true);
  const width = bits / 8;
  if (!((format === 1 && bits === 16) || (format === 3 && bits === 32)) || channels < 1) {
    throw new Error(`unsupported WAV format ${format} with ${bits} bits (need 16-bit PCM or 32-bit float)`);
  }
  const frames = Math.floor(data.length / (width * channels));
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const samples = new Float32Array(frames);
  for (let f = 0; f < frames; f++) {
    let sum = 0;
    for (let c = 0; c < channels; c++) {
      const at = (f * channels + c) * width;
      sum += format === 1 ? dv.getInt16(at, true) / 32768 : dv.getFloat32(at, true);
    }
    samples[f] = sum / channels;
  }
  return { samples, sampleRate };
}
