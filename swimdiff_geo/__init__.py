"""swimdiff-geo: SwiMDiff pretraining, change and land-cover mapping from satellite images.

The inference side (:mod:`swimdiff_geo.inference`) needs only numpy and onnxruntime; the training
side (:mod:`swimdiff_geo.models`, :mod:`swimdiff_geo.data`, :mod:`swimdiff_geo.train`) needs the
``train`` extra (torch, lightning, torchmetrics, kornia).
"""

__version__ = "0.2.0"
