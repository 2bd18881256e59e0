"""See ngxsim_test_order: module "aa", its phase handlers trylast."""
from ngxsim_test_order import make

ngxsim_phase_handlers = make("aa", trylast=True)
