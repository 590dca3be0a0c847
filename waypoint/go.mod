module ambit.dev/waypoint

go 1.26.8

replace ambit.dev/proto => ../proto
