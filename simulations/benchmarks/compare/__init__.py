"""``fedsynth benchmark``: fedsynth against centralized SDV synthesizers, on one split, one run.

Contenders (``--models``; default: every SDV synthesizer below and every model kind in
:data:`synth_models.synthesizer.MODELS`):

* SDV 2.0 ``GaussianCopulaSynthesizer`` (``gaussiancopula``), ``CTGANSynthesizer`` (``ctgan``)
  and ``TVAESynthesizer`` (``tvae``): non-private and centralized, so they run once, at
  epsilon = inf, whatever ``--epsilons`` says. They get the same metadata as fedsynth
  (``Metadata.load_from_dict``) and fit on ``{table_name: train}``.
* each fedsynth model kind, at every epsilon of ``--epsilons`` (``inf``: the same model without
  DP), centralized (``TabularSynthesizer`` on the pooled training rows: one merchant) and,
  per ``--federated``, as a Flower simulation of ``--merchants`` merchants (``iid``, and/or
  ``dirichlet``: label skew, Dirichlet(``--alpha``) over ``--partition-column``, by default the
  dataset's target) through :func:`simulations.runner.run_simulation_job`. epsilon and delta
  are per merchant; the synthesizer's epsilon is the maximum over merchants. Federated runs
  train ``--rounds`` rounds of ``ceil(epochs / rounds)`` local epochs, so each merchant takes
  about as many passes over its rows as the central model over all rows. ``--no-central`` drops
  the central runs (to split a long benchmark into runs on the same split).

Every contender fits on the same training rows (``client.merchant.holdout_split`` of the table,
after the optional ``--rows`` subsample), samples as many rows as the training set (or
``--sample-rows``) and is scored on the same real rows with :func:`privacy.audit.audit_table`:
SDMetrics quality (default pair thresholds and all pairs) against the training rows, TSTR/TRTR on
the target (tested on the holdout), the distance membership attack (members: training rows,
non-members: holdout) with its empirical epsilon lower bound, and SDMetrics' DCR baseline and
overfitting protection (heuristics, 40 synthetic rows by default).

Isolation and cost: each contender fits and samples in a fresh process (``multiprocessing``
spawn). A failure or a time-out (``--timeout``) is recorded as a failed row with its error and
the benchmark goes on. Fit wall time is measured around the fit call inside that process (for a
federation: Flower's whole simulated run, ``flwr run`` via ``simulations.engine``: Ray start-up,
schema round, every round);
sampling and scoring are timed separately. Peak memory is the peak resident set size (RSS) of
the contender's whole process tree (the process, and for federations Ray's services and
workers), sampled from ``/proc`` every 0.2 s by the parent; it includes the interpreter and the
imported libraries, whose RSS just before fitting is recorded too (``import_rss_mb``), and it
can miss a spike shorter than the sampling interval (the process's own exact peak,
``getrusage``'s ``ru_maxrss``, is recorded as ``peak_main_mb``). ``--threads`` caps torch and
OpenMP/BLAS threads in each contender; scoring always runs with one OpenMP thread (on a shared
machine scikit-learn's spinning OpenMP threads made TSTR ~20x slower).

Output folder: ``results.json`` (configuration, environment, one record per contender),
``results.md`` (the Markdown table), PNG plots (:mod:`.plots`) and the
logs (``run.log``; each contender's own output in ``logs/``).

Modules, one job each:

* :mod:`.config`: what runs (:class:`BenchmarkConfig`, :class:`Contender`, :func:`contenders`,
  the :class:`ContenderJob` a contender's process gets);
* :mod:`.arguments`: the command line (:func:`add_arguments`, :func:`config_from_args`, and
  :func:`~.arguments.command_line`, which writes a configuration back as a command);
* :mod:`.isolation`: one contender in its own process (time-out, memory sampling, no leftover
  processes), with :mod:`.proctree` reading and killing process trees from ``/proc``;
* :mod:`.fitting`: fitting SDV, central and federated fedsynth, and sampling (in that process);
* :mod:`.scoring`: the Audit's scores of the synthetic rows;
* :mod:`.report`: ``results.json``, the Markdown table, the machine; :mod:`.plots`: the PNGs;
* :mod:`.run`: :func:`run_benchmark`, tying them together.
"""

from simulations.benchmarks.compare.arguments import add_arguments, config_from_args
from simulations.benchmarks.compare.config import BenchmarkConfig, Contender, contenders
from simulations.benchmarks.compare.run import run_benchmark

__all__ = [
    "BenchmarkConfig",
    "Contender",
    "add_arguments",
    "config_from_args",
    "contenders",
    "run_benchmark",
]
