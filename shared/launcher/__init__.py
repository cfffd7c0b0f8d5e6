"""The embedded launcher: `lgc up` and the `EmbeddedCluster` class it (and the integration tests)
use to run a whole cluster on one machine, each service its own OS process. See README.md here."""
