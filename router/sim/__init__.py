"""`router simulate`: the real router against simulated providers, on virtual time.

A policy and a fault profile (profile.py) in; what the router did out (report.py): success rate,
attempts, upstream load, latency, who served when, how fast it recovered from each outage. The
router is the production one (planner, classifier, breakers, limits, budgets, the transport's
timeouts); only the providers (provider.py, client.py) and the clock (loop.py) are simulated.

    simulate.py   one run: models + transport + Router on a VirtualTimeLoop -> Outcomes
    driver.py     open-loop arrivals and what each request got
    loop.py       the virtual-time event loop
    client.py     the simulated wire under the real transport
    provider.py   what a provider decides for each attempt (shared with http_fake.py)
    profile.py    the fault profile loader; latency.py its log-normal fit
    report.py     the figures; text.py, plot.py their renderings; command.py the CLI
    http_fake.py  the same decisions over real HTTP, for the agreement test

Only `add_parser` is imported here, so that registering the subcommand costs nothing.
"""

from router.sim.command import add_parser

__all__ = ["add_parser"]
