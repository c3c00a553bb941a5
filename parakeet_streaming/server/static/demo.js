// The demo page: microphone -> AudioWorklet -> 16 kHz pcm16 binary frames -> the WebSocket port;
// results update the live partial line, `eou` messages add utterance lines.
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const RATE = 16000;
let session = null;

function wsUrl(sampleRate) {
  // ?ws=ws://host:port/ overrides (e.g. behind a proxy); default: this host, the server's --ws-port.
  const port = document.querySelector('meta[name="parakeet-ws-port"]').content;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = new URL(params.get("ws") || `${scheme}://${location.hostname}:${port}/`);
  url.searchParams.set("encoding", "pcm16");
  url.searchParams.set("sample_rate", String(sampleRate));
  if (params.get("token")) url.searchParams.set("token", params.get("token"));  // servers with --api-key
  return url.toString();
}

function pcm16(samples) {
  const out = new DataView(new ArrayBuffer(samples.length * 2));
  for (let i = 0; i < samples.length; i++) {
    const v = Math.round(samples[i] * 32768);
    out.setInt16(i * 2, Math.max(-32768, Math.min(32767, v)), true);
  }
  return out.buffer;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function addUtterance(text) {
  if (!text) return;
  const li = document.createElement("li");
  li.textContent = text;
  $("utterances").append(li);
}

async function start() {
  $("start").disabled = true;
  $("utterances").replaceChildren();
  $("partial").textContent = "";
  $("final").textContent = "";
  setStatus("starting microphone…");
  try {
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const context = new AudioContext({ sampleRate: RATE });
    await context.audioWorklet.addModule("capture-worklet.js");
    const source = context.createMediaStreamSource(media);
    const node = new AudioWorkletNode(context, "parakeet-capture", {
      processorOptions: { blockSize: Math.round(context.sampleRate / 10) },  // 100 ms
    });
    const ws = new WebSocket(wsUrl(context.sampleRate));
    ws.binaryType = "arraybuffer";
    session = { media, context, source, node, ws, committed: "", text: "", stopping: null };
    ws.onmessage = (ev) => onMessage(session, JSON.parse(ev.data));
    ws.onclose = () => onClose(session);
    node.port.onmessage = (ev) => {
      if (ws.readyState === WebSocket.OPEN && ev.data.samples.length) ws.send(pcm16(ev.data.samples));
      if (ev.data.last && session.stopping) session.stopping();
    };
  } catch (err) {
    setStatus(`cannot start: ${err.message}`, true);
    $("start").disabled = false;
  }
}

function onMessage(s, msg) {
  if (msg.type === "hello") {
    s.source.connect(s.node);  // audio flows once the server has opened the stream
    setStatus(`listening (model ${msg.model}, stream ${msg.stream_id})`);
    $("stop").disabled = false;
  } else if (msg.type === "result") {
    s.text = msg.text;
    const partial = msg.text.startsWith(s.committed) ? msg.text.slice(s.committed.length).trim() : msg.text;
    if (msg.is_final) {
      addUtterance(partial);  // the unfinished last utterance
      $("partial").textContent = "";
      $("final").textContent = msg.text;
      setStatus("done");
    } else {
      $("partial").textContent = partial;
    }
  } else if (msg.type === "eou") {
    addUtterance(msg.text);
    s.committed = s.text;
    $("partial").textContent = "";
  } else if (msg.type === "error") {
    setStatus(`error ${msg.code}: ${msg.message}`, true);
  }
}

async function stop() {
  const s = session;
  $("stop").disabled = true;
  setStatus("finishing…");
  await new Promise((resolve) => {
    s.stopping = resolve;
    s.node.port.postMessage("flush");
  });
  if (s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({ type: "close" }));
  release(s);
}

function release(s) {
  s.source.disconnect();
  s.media.getTracks().forEach((t) => t.stop());
  if (s.context.state !== "closed") s.context.close();
}

function onClose(s) {
  release(s);
  if (!$("final").textContent && !$("status").className) setStatus("connection closed");
  $("start").disabled = false;
  $("stop").disabled = true;
}

$("start").onclick = start;
$("stop").onclick = stop;
