"""NNI model spaces used by the plugins, and graph views of their samples."""
import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)
