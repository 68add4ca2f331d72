"""One module a sampler; each defines ``SAMPLER`` (see ``neuralrg.sampling.registry``)."""
