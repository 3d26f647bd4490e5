"""The bottom floor: helpers every other package may import (and that import nothing of
mimkit but ``errors``): atomic writes and safe loading, RNG state, rank helpers, the
cache root."""
