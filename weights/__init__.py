"""The weights shipped with ssmzoo (installed as the package ``ssmzoo.weights``); see manifest.json."""
