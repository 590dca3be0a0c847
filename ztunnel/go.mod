module ambit.dev/ztunnel

go 1.26.8

replace ambit.dev/proto => ../proto

require golang.org/x/sys v0.49.0
