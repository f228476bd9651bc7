"""Training-side data: OSCD reader, pretraining windows, augmentations, labelled datasets.

Modules are imported explicitly (``from swimdiff_geo.data.pretrain import ...``) so that the
light readers (e.g. :mod:`swimdiff_geo.data.oscd`) do not pull in torch and kornia.

- :mod:`swimdiff_geo.data.pretrain`: random windows with scene ids and dates from manifests,
  GeoTIFF folders, OSCD and SSL4EO-S12 / SeCo archives (SwiMDiff pretraining).
- :mod:`swimdiff_geo.data.augment`: kornia batch augmentations for any number of bands.
- :mod:`swimdiff_geo.data.oscd`: the OSCD dataset as distributed.
"""
