"""torchrun with a bounded, configurable exit barrier (tools/dist_*.sh).

When a node's workers have finished, torchrun's agent waits at an exit
barrier for the agents of every other node, 300 s by default, with no
command-line option to change it. If another node's launcher was killed,
node 0's launcher therefore sat there for five minutes after training had
ended. This entry point is ``python -m torch.distributed.run`` with one more
option, ``--exit-barrier-timeout SECONDS`` (default
:data:`DEFAULT_EXIT_BARRIER_TIMEOUT`), passed to torchrun's
``LocalElasticAgent``; every other option is torchrun's own.

    python -m fec_mm.engine.dist_run --exit-barrier-timeout 30 --nnodes 2 ... train.py ...
"""
import argparse
from typing import List, Optional

from torch.distributed import run as torchrun
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.launcher import api as launcher_api

# Seconds a finished node's launcher waits for the other nodes' launchers.
# Ranks of an mmengine run end together (the last iteration, checkpoint and
# validation are collective), so a minute is ample; a dead peer costs no more.
DEFAULT_EXIT_BARRIER_TIMEOUT = 60.0


def bounded_agent(exit_barrier_timeout: float) -> type:
    """torchrun's LocalElasticAgent with ``exit_barrier_timeout`` as default."""

    class BoundedExitAgent(LocalElasticAgent):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault('exit_barrier_timeout', exit_barrier_timeout)
            super().__init__(*args, **kwargs)

    return BoundedExitAgent


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``--exit-barrier-timeout``, then run torchrun with the rest."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument('--exit-barrier-timeout', type=float,
                        default=DEFAULT_EXIT_BARRIER_TIMEOUT)
    args, rest = parser.parse_known_args(argv)
    if not args.exit_barrier_timeout > 0:
        parser.error(f'--exit-barrier-timeout must be > 0 seconds, got '
                     f'{args.exit_barrier_timeout}')
    launcher_api.LocalElasticAgent = bounded_agent(args.exit_barrier_timeout)
    torchrun.main(rest)


if __name__ == '__main__':
    main()
