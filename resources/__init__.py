"""Studio's shipped files: the embedded models, model configs, tokenizers, default workflows
and example images. In a source checkout this is ``resources/``; the wheel installs it as
the package ``studio_resources`` (see setup.py), found by ``studio.modelfiles.RESOURCES``.
"""
