"""The web viewer behind ``histokd view``: deep-zoom tiles of the workspace's slides through the project's
reader, overlay tiles of every model's predictions rendered server-side, and the page (OpenSeadragon).

Modules: :mod:`~histokd.viewer.deepzoom` (pyramid geometry, slide tiles), :mod:`~histokd.viewer.layers`
(overlay rasters and their colours), :mod:`~histokd.viewer.catalog` (what the workspace holds),
:mod:`~histokd.viewer.app` (the Starlette app), :mod:`~histokd.viewer.export` (static export),
:mod:`~histokd.viewer.assets` (OpenSeadragon, fetched at set-up time). See ``docs/viewer.md``.
"""
