module ambit.dev/bench

go 1.26.8
