"""latenttracer: trace images back to the latent generative model that made them (LatentTracer, ICML 2024)."""

__version__ = "0.1.0"
