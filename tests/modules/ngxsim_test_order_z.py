"""See ngxsim_test_order: module "z", its phase handlers tryfirst."""
from ngxsim_test_order import make

ngxsim_phase_handlers = make("z", tryfirst=True)
