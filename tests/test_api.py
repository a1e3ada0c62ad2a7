import importlib

import histokd


def test_public_verbs_are_functions_even_after_submodule_imports():
    # importing the implementing modules must not shadow the verbs with subpackages/modules
    for spec in histokd._API.values():
        importlib.import_module(spec.split(":")[0])
    for verb in histokd._API:
        assert callable(getattr(histokd, verb)), verb
    assert histokd.demo.__module__ == "histokd.pipeline.demo"
