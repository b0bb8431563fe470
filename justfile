# Thin wrappers: every recipe is a cargo alias or a script in the repo.

sim *ARGS:
    cargo sim {{ARGS}}

test:
    cargo test --workspace

robustness *ARGS:
    cargo robustness {{ARGS}}

bench:
    cargo bench -p benches

ci:
    bash .ci/run
