"""gRPC servicers: protobuf ⇄ plain Python values only; no model code here."""
