"""The verbs of histokd: one module per stage, each composing the library packages below it.

``tile``, ``embed``, ``train``, ``label``, ``report``, ``bench``, ``probe`` (linear probe and encoder
comparison), ``train_encoder`` and ``demo``. (``synth`` and ``import_features`` still live in ``synth/`` and
``features/``: they import nothing above their floor, so the layering test accepts them there.) This is the only floor (with ``viewer``) that knows the workspace layout of a
whole run and the cohort; the CLI (``histokd.cli``) and the public API (``histokd.tile(...)``, ...) call
it, and no library package imports it (``tests/test_layout.py``). Modules are imported on use, so that
``import histokd.pipeline`` stays cheap.
"""
