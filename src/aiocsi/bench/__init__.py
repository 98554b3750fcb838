"""`aiocsi bench`: a load harness for any CSI driver's unix socket (issue 7).

Modules: `config` (flags -> BenchConfig; stdlib only, imported by `aiocsi.cli`), `cli`
(entry point, exit codes), `app` (one run: phases, signals, cleanup), `stats` (samples,
percentiles, the JSON report), `runner` (workers, budget), `lifecycles` (one volume
lifecycle through the CSI stubs of `aiocsi.client`), `raw` (the same host work without a
driver), `workspace` (the run's directory and its leftovers), `spawn` (`--spawn`),
`scenarios` (probe, lifecycle, churn, sweep, raw), `machine`, `render` (progress, tables,
plot). Nothing here is imported by the driver itself.
"""

from __future__ import annotations
