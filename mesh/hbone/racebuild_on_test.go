//go:build race

package hbone

// raceBuild says this test binary was built with -race.
const raceBuild = true
