//! The volumes of every drive as one read-only index: what `serve` looks paths up in.
//!
//! Drive `i` holds volume `i` (the order of `--media`). Each object keeps its drive: a lookup
//! gives the object and its storage address ([`drivers::storage::drives::address`]), which
//! is the plain volume offset on drive 0. A path packed on more than one volume is served
//! from the first drive listed; the others' copies are recorded as [`Shadowed`] (warned at
//! start-up, listed by the console's `media`).
use std::collections::HashMap;
use std::sync::Arc;

use drivers::storage::drives;

use super::{Object, Volume};

/// One drive's volume as it was loaded.
#[derive(Debug)]
pub struct DriveVolume {
    /// What `--media` named ("a.vol", "nvme:0000:00:04.0"), or what it turned out to be.
    pub source: String,
    /// Objects on this drive (served or shadowed).
    pub objects: usize,
    /// Sum of their sizes.
    pub data_bytes: u64,
    /// Length of the volume in bytes.
    pub total_len: u64,
    /// Why the drive serves nothing (it could not be opened or its volume loaded at start).
    pub failed: Option<String>,
}

/// A path found on a later drive too: served from `served_from`, hidden on `hidden_on`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadowed {
    pub path: String,
    pub served_from: usize,
    pub hidden_on: usize,
}

/// What a lookup found.
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    pub object: &'a Object,
    pub drive: usize,
    /// Storage address of the object's extent: its drive and volume offset.
    pub address: u64,
}

/// Every drive's index, merged.
#[derive(Debug)]
pub struct Library {
    drives: Vec<DriveVolume>,
    /// Served objects, sorted by path, each with its drive.
    objects: Vec<(Object, u8)>,
    by_path: HashMap<Box<str>, u32>,
    shadowed: Vec<Shadowed>,
    data_bytes: u64,
}

impl Library {
    /// Merges `volumes` (drive 0 first) with the name each came from. At most
    /// [`drives::MAX_DRIVES`] volumes.
    pub fn new(volumes: Vec<(String, Volume)>) -> Library {
        Self::with_failed(volumes.into_iter().map(|(source, v)| (source, Ok(v))).collect())
    }

    /// [`Library::new`] where some drives have no volume, with why: they keep their drive
    /// number and serve nothing.
    pub fn with_failed(volumes: Vec<(String, Result<Volume, String>)>) -> Library {
        assert!(volumes.len() <= drives::MAX_DRIVES, "more volumes than drives can be addressed");
        let mut drives = Vec::with_capacity(volumes.len());
        let count = volumes.iter().map(|(_, v)| v.as_ref().map_or(0, |v| v.objects.len())).sum();
        let mut objects: Vec<(Object, u8)> = Vec::with_capacity(count);
        let mut by_path: HashMap<Box<str>, u32> = HashMap::with_capacity(count);
        let mut shadowed = Vec::new();
        for (drive, (source, volume)) in volumes.into_iter().enumerate() {
            let volume = match volume {
                Ok(v) => v,
                Err(reason) => {
                    drives.push(DriveVolume { source, objects: 0, data_bytes: 0, total_len: 0, failed: Some(reason) });
                    continue;
                }
            };
            drives.push(DriveVolume {
                source,
                objects: volume.objects.len(),
                data_bytes: volume.data_bytes,
                total_len: volume.total_len,
                failed: None,
            });
            for object in volume.objects {
                if let Some(&first) = by_path.get(object.path.as_str()) {
                    let served_from = objects[first as usize].1 as usize;
                    shadowed.push(Shadowed { path: object.path, served_from, hidden_on: drive });
                    continue;
                }
                by_path.insert(Box::from(object.path.as_str()), objects.len() as u32);
                objects.push((object, drive as u8));
            }
        }
        // Sorted by path, as one volume's objects are; the map follows.
        if drives.len() > 1 {
            objects.sort_unstable_by(|a, b| a.0.path.cmp(&b.0.path));
            for (i, (object, _)) in objects.iter().enumerate() {
                if let Some(slot) = by_path.get_mut(object.path.as_str()) {
                    *slot = i as u32;
                }
            }
        }
        let data_bytes = objects.iter().map(|(o, _)| o.size).sum();
        Library { drives, objects, by_path, shadowed, data_bytes }
    }

    pub fn lookup(&self, path: &str) -> Option<Found<'_>> {
        let (object, drive) = &self.objects[*self.by_path.get(path)? as usize];
        let drive = *drive as usize;
        Some(Found { object, drive, address: drives::address(drive, object.offset) })
    }

    /// Served objects sorted by path, with their drive.
    pub fn objects(&self) -> impl ExactSizeIterator<Item = (&Object, usize)> {
        self.objects.iter().map(|(o, d)| (o, *d as usize))
    }

    /// How many objects are served.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Sum of the served objects' sizes.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// The drives' volumes, drive 0 first.
    pub fn drives(&self) -> &[DriveVolume] {
        &self.drives
    }

    /// Paths on more than one drive, in the order they were found.
    pub fn shadowed(&self) -> &[Shadowed] {
        &self.shadowed
    }
}

/// One volume on drive 0.
impl From<Volume> for Library {
    fn from(volume: Volume) -> Library {
        Library::new(vec![(String::new(), volume)])
    }
}

impl From<Volume> for Arc<Library> {
    fn from(volume: Volume) -> Arc<Library> {
        Arc::new(Library::from(volume))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback::volume_of;

    #[test]
    fn one_volume_is_looked_up_as_the_volume_itself() {
        let (_dir, _s, volume) = volume_of(&[("a.txt", b"aaa"), ("d/b.ts", &[7u8; 9000])]);
        let want: Vec<Object> = volume.objects().to_vec();
        let (data_bytes, total_len) = (volume.data_bytes(), volume.total_len());
        let library = Library::from(volume);
        assert_eq!((library.len(), library.data_bytes(), library.drives().len()), (2, data_bytes, 1));
        assert_eq!(library.drives()[0].total_len, total_len);
        for o in &want {
            let f = library.lookup(&o.path).unwrap();
            assert_eq!((f.object, f.drive, f.address), (o, 0, o.offset), "drive 0 addresses are volume offsets");
        }
        let listed: Vec<&Object> = library.objects().map(|(o, _)| o).collect();
        assert_eq!(listed, want.iter().collect::<Vec<_>>());
        assert!(library.lookup("/nope").is_none());
        assert!(library.shadowed().is_empty());
        assert!(library.drives()[0].failed.is_none());
    }

    #[test]
    fn a_drive_without_its_volume_keeps_its_number_and_serves_nothing() {
        let (_d, _s, v2) = volume_of(&[("two.txt", b"2")]);
        let library = Library::with_failed(vec![("gone.vol".into(), Err("no such file".into())), ("two.vol".into(), Ok(v2))]);
        assert_eq!(library.drives()[0].failed.as_deref(), Some("no such file"));
        assert_eq!((library.drives()[0].objects, library.len()), (0, 1));
        assert_eq!(library.lookup("/two.txt").unwrap().drive, 1);
    }

    #[test]
    fn volumes_merge_and_objects_remember_their_drive() {
        let (_d0, _s0, v0) = volume_of(&[("b.txt", b"b0"), ("same.txt", b"first"), ("z/0.ts", &[0u8; 5000])]);
        let (_d1, _s1, v1) = volume_of(&[("a.txt", b"a1"), ("same.txt", b"second!"), ("y/1.ts", &[1u8; 7000])]);
        let off_same0 = v0.lookup("/same.txt").unwrap().offset;
        let off_a1 = v1.lookup("/a.txt").unwrap().offset;
        let library = Library::new(vec![("zero.vol".into(), v0), ("nvme:auto".into(), v1)]);
        let paths: Vec<(&str, usize)> = library.objects().map(|(o, d)| (o.path.as_str(), d)).collect();
        assert_eq!(
            paths,
            [("/a.txt", 1), ("/b.txt", 0), ("/same.txt", 0), ("/y/1.ts", 1), ("/z/0.ts", 0)],
            "sorted by path across drives, the shadowed copy left out"
        );
        let a = library.lookup("/a.txt").unwrap();
        assert_eq!((a.drive, a.address), (1, drivers::storage::drives::address(1, off_a1)));
        assert_eq!(drivers::storage::drives::split(a.address), (1, off_a1));
        let same = library.lookup("/same.txt").unwrap();
        assert_eq!((same.drive, same.address, same.object.size), (0, off_same0, 5), "the first listed wins");
        assert_eq!(library.shadowed(), [Shadowed { path: "/same.txt".into(), served_from: 0, hidden_on: 1 }]);
        assert_eq!(library.data_bytes(), 2 + 5 + 5000 + 2 + 7000, "a shadowed copy is not served");
        let drives = library.drives();
        assert_eq!((drives[0].source.as_str(), drives[0].objects, drives[0].data_bytes), ("zero.vol", 3, 2 + 5 + 5000));
        assert_eq!((drives[1].source.as_str(), drives[1].objects, drives[1].data_bytes), ("nvme:auto", 3, 2 + 7 + 7000));
        for (o, d) in library.objects() {
            let f = library.lookup(&o.path).unwrap();
            assert_eq!((f.drive, f.object), (d, o));
        }
    }
}
