module ambit.dev/bench

go 1.26.8

replace ambit.dev/proto => ../proto
