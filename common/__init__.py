"""What every layer shares and nothing of the project's own: the config-tree machinery and the
error hierarchy. `engine` depends on `sandbox`, `train` and this; `sandbox` and `train` never
import `engine`."""
