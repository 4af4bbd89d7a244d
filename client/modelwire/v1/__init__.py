"""Generated protobuf and gRPC code of the modelwire.v1 contract (scripts/gen_protos.py)."""
