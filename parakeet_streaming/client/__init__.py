"""Python client for parakeet-server (WebSocket): async and blocking APIs, typed messages.

    from parakeet_streaming.client import transcribe_file
    transcript = await transcribe_file("ws://localhost:8000", "speech.wav")
"""
from parakeet_streaming.client.aio import StreamingClient, Transcript, transcribe_file
from parakeet_streaming.client.audio import load_audio
from parakeet_streaming.client.messages import (ClientError, Eou, Error, Hello, Pong, ProtocolViolation, Result,
                                                ServerError, StreamClosed, Word, parse_message)
from parakeet_streaming.client.sync import SyncStreamingClient, transcribe_file_sync

__all__ = [
    "ClientError", "Eou", "Error", "Hello", "Pong", "ProtocolViolation", "Result", "ServerError", "StreamClosed",
    "StreamingClient", "SyncStreamingClient", "Transcript", "parse_message", "transcribe_file",
    "transcribe_file_sync", "Word", "load_audio",
]
