"""SkyEdge: train, compress, evaluate and ship a sky-camera + sensor nowcaster to edge devices.

This package is the library layer (ARCHITECTURE §8): it never imports `stages/`, `flows/` or `cli/`.
Modules that a device needs (contract, features, manifest, signing, runtime) import no torch.
"""

__version__ = "0.1.0"
