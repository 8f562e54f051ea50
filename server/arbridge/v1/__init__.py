"""Generated from protos/arbridge/v1 by `make protos`. Do not edit."""
