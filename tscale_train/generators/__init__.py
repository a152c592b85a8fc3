"""One `FlowGenerator` per diffusers pipeline family (see `tscale_train.generation`)."""
