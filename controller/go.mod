module ambit.dev/controller

go 1.26.8
