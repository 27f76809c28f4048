"""A controller with extras for tests/aggregators/test_controller.py, in its own module: NVFlare's export copies the
module defining the controller class and, recursively, the modules it imports, so a class defined in the test module
would put pytest into the job's ``custom/`` folder. Numpy is imported inside the methods for the same reason."""

from src.aggregators.controller import FederatedFedAvg


class WithExtras(FederatedFedAvg):
    def round_extras(self, model):
        import numpy as np

        return {"scale": np.array(2.0)}

    def site_extras(self, site, model):
        import numpy as np

        return {"anchor": np.full(2, float(site[-1]))} if site != "site-3" else {}
