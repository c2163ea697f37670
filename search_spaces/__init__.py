"""NNI model spaces used by the plugins, and graph views of their samples."""
import nni_plugins.compat  # noqa: F401  (leaf module: NNI 3.0 fixes, depends only on nni/torch)
