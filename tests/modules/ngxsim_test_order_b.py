"""See ngxsim_test_order: module "b" (plain)."""
from ngxsim_test_order import make

ngxsim_phase_handlers = make("b", specname="ngxsim_phase_handlers")
