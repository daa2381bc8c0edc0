"""urbanrep: urban region embeddings from multimodal city data with graph neural networks."""

from urbanrep.errors import UrbanRepError

__version__ = "0.1.0"
__all__ = ["UrbanRepError", "__version__"]
