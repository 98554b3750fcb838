"""The gRPC edge: socket, server lifecycle and the per-call interceptor."""
