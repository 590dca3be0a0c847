//go:build !race

package hbone

func raceReleaseMerge() {}
func raceAcquire()      {}
