"""Settings every test shares."""

import os

# Ray reads this when it is imported: every Ray process a test starts binds and advertises 127.0.0.1 only
# (by default Ray advertises the machine's interface address). Nothing in the tests talks to another address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
