"""gRPC layer: servicers that only translate protobuf to domain calls, and the status mapping."""
