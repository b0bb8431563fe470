# Thin wrappers: every recipe is a cargo alias or a script in the repo.

sim *ARGS:
    cargo sim {{ARGS}}

test:
    cargo test --workspace

robustness *ARGS:
    cargo robustness {{ARGS}}

e2e *ARGS:
    cargo e2e {{ARGS}}

bench:
    cargo bench -p benches

# Every fuzz target, long, in release: 100,000 cases each (`CASES=5000 just fuzz` for fewer).
fuzz:
    PROPTEST_CASES=${CASES:-100000} cargo test --release -p dataplane -p control --lib fuzz_

ci:
    bash .ci/run
