"""Measurements and training beside the server: `arbridge bench`, `fusion-demo`,
`train-projector`, and the demo's sentence encoder. The server never imports these."""
