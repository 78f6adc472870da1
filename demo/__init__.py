"""The whole service on one machine, for people and for tests: no AWS account, no cluster.

- `python -m demo` (`make demo`): a local Secrets Manager, two demo clusters, the service through
  `chalice local`, and the login page on another origin.
- `demo.kube_apiserver`: a TLS Kubernetes API server that answers TokenReview and issuer discovery
  strictly, as a real one does; the demo's clusters, and the test suite's.

Nothing here is deployed (only app.py and chalicelib/ are), and nothing here imports tests/.
"""
