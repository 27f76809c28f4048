"""Inference-time methods that run on a site: IOP-FL's test-time routing and the outside evaluation."""
