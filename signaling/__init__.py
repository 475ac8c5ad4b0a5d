"""Signaling server: peer registry and offer/answer/candidate relay over WebSocket."""
